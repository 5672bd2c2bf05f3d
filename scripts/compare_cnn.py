"""Every gsparse method on the bundled digits with the small ResNet (see gsparse/tasks/vision/compare.py)."""
import sys

from gsparse.tasks.vision.compare import main

if __name__ == "__main__":
    sys.exit(main())
