"""The login page, throttled: after MAX_FAILURES wrong passwords for one user name within WINDOW, that
name is refused (429) until the window has passed, so a password cannot be guessed at web speed."""
from __future__ import annotations

from .setup import importable

importable()
import datetime as dt  # noqa: E402

from django.contrib.auth.views import LoginView  # noqa: E402
from django.utils import timezone  # noqa: E402

from .models import LoginFailure  # noqa: E402

MAX_FAILURES = 5
WINDOW = dt.timedelta(minutes=15)


class ThrottledLoginView(LoginView):
    template_name = "office/login.html"

    def _name(self) -> str:
        return (self.request.POST.get("username") or "").strip()[:150]

    def post(self, request, *args, **kwargs):
        since = timezone.now() - WINDOW
        LoginFailure.objects.filter(at__lt=since).delete()
        failures = LoginFailure.objects.filter(username=self._name(), at__gte=since).order_by("at")
        if failures.count() >= MAX_FAILURES:
            wait = int((failures.first().at + WINDOW - timezone.now()).total_seconds() // 60) + 1
            context = self.get_context_data(form=self.get_form(), locked_minutes=wait)
            return self.render_to_response(context, status=429)
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form):
        LoginFailure.objects.create(username=self._name(), at=timezone.now())
        return super().form_invalid(form)

    def form_valid(self, form):
        LoginFailure.objects.filter(username=self._name()).delete()
        return super().form_valid(form)
