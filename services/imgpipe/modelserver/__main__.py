import sys

from imgpipe.modelserver.server import main

sys.exit(main())
