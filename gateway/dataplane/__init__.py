"""The inference path: routing to a replica, the one backend-call function,
batching, the upstream pool."""
