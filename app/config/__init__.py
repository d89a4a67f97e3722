"""Configs (`x-portkey-config`): validated at the edge into frozen models."""
