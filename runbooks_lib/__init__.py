"""pg-runbooks: the library behind the runbook notebooks.

The library logger ``runbooks_lib`` has no handler: it stays quiet unless the caller configures
logging (``runbooks -v``).
"""

import logging

logging.getLogger("runbooks_lib").addHandler(logging.NullHandler())

__version__ = "0.1.0"
