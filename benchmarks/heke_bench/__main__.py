from heke_bench.cli import main

raise SystemExit(main())
