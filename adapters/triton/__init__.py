"""The Triton runtime adapter."""
