from django.apps import AppConfig


class OfficeConfig(AppConfig):
    name = "vendor_node.office"
    label = "office"
    verbose_name = "vendor_node back office"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        """Every save or delete of what bundles share marks the shared bundle records stale, in every process
        (the web server's and the command line's); bulk writes call ``bump_bundle_generation`` themselves."""
        from django.db.models.signals import post_delete, post_save

        from .models import BUNDLE_SOURCES, bump_bundle_generation

        for model in BUNDLE_SOURCES:
            post_save.connect(bump_bundle_generation, sender=model, dispatch_uid=f"bundle-save-{model.__name__}")
            post_delete.connect(bump_bundle_generation, sender=model, dispatch_uid=f"bundle-delete-{model.__name__}")
