"""What the platform does for a visitor of a tenant's domain, through
Django's test client and the platform's own middleware: the tenant's data,
and a login with its admin's password. Prints one JSON document."""
import json
import sys

from django.core.management.base import BaseCommand
from django.test import Client


class Command(BaseCommand):
    help = "Serves a tenant's domain through the platform's middleware and logs its admin in."

    def add_arguments(self, parser):
        parser.add_argument("--domain", required=True)
        parser.add_argument("--email")
        parser.add_argument("--password-stdin", action="store_true")

    def handle(self, *args, **options):
        client = Client(HTTP_HOST=options["domain"])
        out = {}
        tenant = client.get("/api/tenant/")
        out["tenant"] = {"status": tenant.status_code, "body": _body(tenant)}
        buildings = client.get("/api/buildings/")
        out["buildings"] = {"status": buildings.status_code, "body": _body(buildings)}
        if options["email"]:
            password = sys.stdin.readline().rstrip("\n") if options["password_stdin"] else ""
            login = client.post(
                "/api/login/",
                data=json.dumps({"email": options["email"], "password": password}),
                content_type="application/json",
            )
            out["login"] = {"status": login.status_code, "body": _body(login)}
        self.stdout.write(json.dumps(out, ensure_ascii=False))


def _body(response):
    try:
        return json.loads(response.content)
    except ValueError:
        return response.content.decode("utf-8", "replace")
