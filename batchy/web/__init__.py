"""The HTTP layer: parse the request, call a service, render the answer."""
