"""What the platform does with a tenant that is not active: its domain is
refused, as a suspended customer's site would be."""
from django.http import HttpResponseForbidden


class ActiveTenantMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        tenant = getattr(request, "tenant", None)
        if tenant is not None and tenant.schema_name != "public" and not tenant.is_active:
            return HttpResponseForbidden("this tenant is suspended")
        return self.get_response(request)
