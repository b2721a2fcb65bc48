import sys

from certify.cli.main import main

sys.exit(main())
