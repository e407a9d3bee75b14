"""CRM: SQLAlchemy models, database access, migrations runner and the demo business seed."""
