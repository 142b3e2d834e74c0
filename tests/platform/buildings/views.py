"""What a tenant's domain serves: its data, and a login with its users'
passwords, checked by Django's own auth."""
import json

from django.contrib.auth import authenticate
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt

from buildings.models import Building
from users.models import CustomUser


def tenant(request):
    t = request.tenant
    return JsonResponse(
        {
            "schema_name": t.schema_name,
            "name": t.name,
            "is_active": t.is_active,
            "on_trial": t.on_trial,
            "paid_until": t.paid_until.isoformat(),
            "users": CustomUser.objects.count(),
            "buildings": Building.objects.count(),
        }
    )


def buildings(request):
    rows = [
        {
            "name": b.name,
            "address": b.address,
            "city": b.city,
            "postal_code": b.postal_code,
            "apartments": b.apartments.count(),
        }
        for b in Building.objects.order_by("id")
    ]
    return JsonResponse({"buildings": rows})


@csrf_exempt
def login(request):
    if request.method != "POST":
        return JsonResponse({"error": "POST email and password"}, status=405)
    body = json.loads(request.body or b"{}")
    user = authenticate(request, email=body.get("email"), password=body.get("password"))
    if user is None:
        return JsonResponse({"error": "wrong email or password"}, status=401)
    return JsonResponse({"email": user.email, "role": user.role, "is_superuser": user.is_superuser})
