"""Encoders that turn text into the representations each field kind stores."""
