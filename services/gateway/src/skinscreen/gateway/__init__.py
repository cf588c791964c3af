"""skinscreen gateway: the REST API that validates, stores and queues screenings."""
