"""The data plane: what a client connection meets, from its first byte to the last byte relayed."""
