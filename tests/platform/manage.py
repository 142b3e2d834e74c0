#!/usr/bin/env python3
"""The platform model's manage.py: the platform's own Django commands
(migrate_schemas, showmigrations, delete_tenant, ...) over DATABASE_URL."""
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "concierge.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
