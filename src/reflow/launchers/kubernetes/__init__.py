"""The kubernetes launcher: one pod per try (needs ``reflow[kubernetes]``).

``manifest`` builds pods and claims from a try and needs no cluster; ``launcher`` talks
to the API server through the official client, imported only when it is used, with
``api`` (requests and retries), ``watch`` (pod states), ``follower`` (container logs),
``outcomes`` (pod status to outcome) and ``fences`` (tries fenced on adoption).
"""
