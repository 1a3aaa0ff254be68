"""Tests of the meshlet CLI."""
