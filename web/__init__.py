"""The Message Center (users' quarantine and settings) and the provider API: `postwarden web`."""
