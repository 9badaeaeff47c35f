from npcrepro.cli import main
import sys

sys.exit(main())
