"""Operator dashboard served by the gateway under /dashboard (admin login, no JavaScript)."""
