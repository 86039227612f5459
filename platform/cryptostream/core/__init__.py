"""Pure cores: no sockets, no clients, no clocks they do not receive."""
