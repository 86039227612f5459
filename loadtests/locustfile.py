"""The query API's Locust file ships in the package (``cryptostream/harness/locustfile.py``), so
the harness finds it from any install; this name keeps the documented command working:

    locust -f loadtests/locustfile.py --host http://127.0.0.1:3000 --headless -u 64 -r 16 -t 60s
"""

from cryptostream.harness.locustfile import *  # noqa: F403  (Locust collects the User classes)
