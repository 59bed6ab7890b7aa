from django.apps import AppConfig


class OfficeConfig(AppConfig):
    name = "vendor_node.office"
    label = "office"
    verbose_name = "vendor_node back office"
    default_auto_field = "django.db.models.BigAutoField"
