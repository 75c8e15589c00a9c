from llmtune_companion.cli import main

raise SystemExit(main())
