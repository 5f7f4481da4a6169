from ownllm.cli import main

raise SystemExit(main())
