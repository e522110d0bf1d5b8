import sys

from appliance._entry import main

sys.exit(main())
