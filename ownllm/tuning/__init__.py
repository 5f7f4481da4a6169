"""Fine-tuning: data validation and tokenisation, the LoRA trainer, the job queue and worker."""
