"""The public schema's URLs, served on the public tenant's domain."""
from django.http import JsonResponse
from django.urls import path

from concierge import signup


def health(request):
    return JsonResponse({"ok": True, "schema": request.tenant.schema_name})


urlpatterns = [
    path("api/health/", health, name="health"),
    path("signup/", signup.signup, name="signup"),
]
