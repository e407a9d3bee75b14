"""Tools the agent calls to read and write the CRM (customers, bookings, orders, inventory, info)."""
