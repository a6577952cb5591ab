"""Migrations of the storage tests' throwaway schema."""
