"""Routing policy: the route table from YAML and how a request's ``model`` picks a route."""
