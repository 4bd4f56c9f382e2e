import sys

from callbridge.cli import main

sys.exit(main())
