"""The Batch API's work: input files checked line by line, batches and their lines in the
database, claimed by workers, and the output and error files assembled at the end.

    validating → in_progress → finalizing → completed
        │             │  (window over)  → expired   (the finished lines kept)
        │             └→ cancelling ────→ cancelled (the finished lines kept)
        └→ failed (the input file's errors, each naming its line)

`input` reads an input file, `store` holds the state machine and the claims, `output`
writes the result files. Running a line is the api layer's (`ownllm.api.batch_worker`):
each goes through the same inference path as a live request. No FastAPI, no torch here.
"""
