"""HTTP edges shared by the gateway and the admin API: error format, admin auth."""
