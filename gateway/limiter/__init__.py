"""Rate-limit backends: `memory` (one process, the embedded default) and `redis` (shared by
every replica, on one Redis server or a Redis Cluster: `nodes`). Both make the same
decisions; see `base`."""
