"""A signup through the platform's own view, with Django's test client on the
public domain: the JSON body from standard input, the response printed as
one JSON document."""
import json
import sys

from django.core.management.base import BaseCommand
from django.test import Client


class Command(BaseCommand):
    help = "POSTs a signup (JSON on stdin) to the platform's signup view."

    def add_arguments(self, parser):
        parser.add_argument("--domain", default="newconcierge.app")

    def handle(self, *args, **options):
        client = Client(HTTP_HOST=options["domain"])
        response = client.post("/signup/", data=sys.stdin.read(), content_type="application/json")
        try:
            body = json.loads(response.content)
        except ValueError:
            body = response.content.decode("utf-8", "replace")
        self.stdout.write(json.dumps({"status": response.status_code, "body": body}, ensure_ascii=False))
