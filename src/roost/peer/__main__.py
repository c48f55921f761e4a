"""``python -m roost.peer --worker CONFIG_JSON``: the detached worker, in a
fresh interpreter (roost.peer.worker; the front starts it so when it cannot
fork)."""

from roost.peer.worker import main

raise SystemExit(main())
