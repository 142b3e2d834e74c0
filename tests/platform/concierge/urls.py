"""A tenant's URLs, served on its domain."""
from django.urls import path

from buildings import views

urlpatterns = [
    path("api/tenant/", views.tenant, name="tenant"),
    path("api/buildings/", views.buildings, name="buildings"),
    path("api/login/", views.login, name="login"),
]
