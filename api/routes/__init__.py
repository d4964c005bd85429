"""The API's routes by subject, each a router built over the door's checks."""
