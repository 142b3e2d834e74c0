"""The platform's signup: the customer's tenant is asked for inside the
signup's own transaction, with provision_client, so a signup rolled back
leaves no tenant and one committed always gets its tenant."""
import json

from django.db import transaction
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt

import provision_client


class SignupAborted(Exception):
    """Something after the request failed: the whole signup is undone."""


@csrf_exempt
def signup(request):
    if request.method != "POST":
        return JsonResponse({"error": "POST the signup as JSON"}, status=405)
    body = json.loads(request.body or b"{}")
    try:
        with transaction.atomic():
            requested = provision_client.request_tenant(
                schema_name=body.get("schema_name"),
                tenant_name=body.get("tenant_name"),
                domain=body.get("domain"),
                admin_email=body.get("email"),
                password=body.get("password"),
                password_hash=body.get("password_hash"),
                trial_days=body.get("trial_days", 30),
                seed_demo_data=body.get("seed_demo_data", False),
            )
            if body.get("fail_after_request"):
                # The platform's own work after the request failed (a
                # payment, say): the transaction, request included, is
                # rolled back.
                raise SignupAborted("the payment was declined")
    except provision_client.InvalidField as e:
        return JsonResponse({"error": {"kind": "invalid", "field": e.field, "rule": e.rule}}, status=400)
    except provision_client.Conflict as e:
        return JsonResponse({"error": {"kind": "conflict", "field": e.field, "rule": e.rule}}, status=409)
    except SignupAborted as e:
        return JsonResponse({"error": {"kind": "aborted", "message": str(e)}}, status=402)
    answer = {"schema_name": requested.schema_name, "state": requested.state, "recorded": requested.recorded}
    if body.get("wait"):
        status = provision_client.wait_until_ready(requested.schema_name, timeout=float(body["wait"]))
        answer["state"] = status.state if status else None
        answer["last_error"] = status.last_error if status else None
    return JsonResponse(answer, status=201 if requested.recorded == "new" else 200)
