"""Settings of the platform model: a django-tenants project shaped as the
platform's guide shows it. The database comes from DATABASE_URL, the same
variable the provisioning binaries read."""
import os
from urllib.parse import unquote, urlparse

SECRET_KEY = os.environ.get("PLATFORM_SECRET_KEY", "the-platform-model-has-no-secrets")
DEBUG = False
ALLOWED_HOSTS = ["*"]

SHARED_APPS = [
    "django_tenants",
    "tenants",
    "django.contrib.contenttypes",
    "django.contrib.auth",
]
TENANT_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "users",
    "buildings",
]
INSTALLED_APPS = SHARED_APPS + [app for app in TENANT_APPS if app not in SHARED_APPS]

TENANT_MODEL = "tenants.Client"
TENANT_DOMAIN_MODEL = "tenants.Domain"
AUTH_USER_MODEL = "users.CustomUser"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

MIDDLEWARE = [
    "django_tenants.middleware.main.TenantMainMiddleware",
    "tenants.middleware.ActiveTenantMiddleware",
    "django.middleware.common.CommonMiddleware",
]
ROOT_URLCONF = "concierge.urls"
PUBLIC_SCHEMA_URLCONF = "concierge.urls_public"

_url = urlparse(os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/concierge"))
DATABASES = {
    "default": {
        "ENGINE": "django_tenants.postgresql_backend",
        "NAME": unquote(_url.path.lstrip("/")),
        "USER": unquote(_url.username or ""),
        "PASSWORD": unquote(_url.password or ""),
        "HOST": _url.hostname or "",
        "PORT": str(_url.port or ""),
    }
}
DATABASE_ROUTERS = ["django_tenants.routers.TenantSyncRouter"]

PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]

USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"
USE_I18N = False
