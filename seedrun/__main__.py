from seedrun.cli import main

raise SystemExit(main())
