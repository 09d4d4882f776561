"""pyro-bhpeft."""
