import sys

from mirador.cli.main import main

sys.exit(main())
