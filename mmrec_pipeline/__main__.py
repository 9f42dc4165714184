import sys

from mmrec_pipeline.cli import main

sys.exit(main())
