from .setup import importable

importable()
from django.contrib.auth import views as auth_views
from django.urls import path

from . import unit_api, unit_pages, views
from .login import ThrottledLoginView

urlpatterns = [
    path("healthz", views.healthz),
    path("login/", ThrottledLoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", views.index, name="index"),
    path("employees/", views.employees, name="employees"),
    path("employees/<str:employee_id>/", views.employee, name="employee"),
    path("employees/<str:employee_id>/delete-biometrics/", views.delete_biometrics, name="delete_biometrics"),
    path("funds/", views.funds, name="funds"),
    path("sales/", views.sales, name="sales"),
    path("units/", unit_pages.units, name="units"),
    path("units/<str:unit_id>/", unit_pages.unit_page, name="unit"),
    path("units/<str:unit_id>/reinstalled/", unit_pages.reinstalled, name="unit_reinstalled"),
    path("alerts/", views.alerts_page, name="alerts"),
    path("audit/", views.audit_log, name="audit"),
    path("api/v1/alerts", views.alerts_json, name="alerts_json"),
    path("api/v1/units/<str:unit_id>/journal", unit_api.journal),
    path("api/v1/units/<str:unit_id>/templates", unit_api.templates),
    path("api/v1/units/<str:unit_id>/heartbeat", unit_api.heartbeat),
    path("api/v1/units/<str:unit_id>/bundle", unit_api.bundle),
    path("api/v1/units/<str:unit_id>/summary", unit_api.summary),
]
