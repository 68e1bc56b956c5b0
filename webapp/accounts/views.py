from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.debug import sensitive_post_parameters

from webapp.accounts.forms import SignupForm
from webapp.accounts.selectors import home_summary
from webapp.accounts.services import user_create


@login_required
def home(request):
    return render(request, "accounts/home.html", home_summary(user=request.user))


@sensitive_post_parameters("password1", "password2")
def signup(request):
    # Read at request time (not at import) so a deployment, or a test, can switch it.
    if not settings.ALLOW_SIGNUP:
        raise Http404("Sign up is turned off on this server")
    if request.user.is_authenticated:
        return redirect("home")
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = user_create(username=form.cleaned_data["username"], password=form.cleaned_data["password1"])
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        messages.success(request, f"Welcome, {user.get_username()}! Your account is ready.")
        return redirect("home")
    return render(request, "registration/signup.html", {"form": form}, status=400 if form.errors else 200)


class LogoutView(auth_views.LogoutView):
    """Django's (POST only), plus a word on the login page it lands on."""

    def post(self, request, *args, **kwargs):
        response = super().post(request, *args, **kwargs)
        messages.info(request, "You are logged out.")  # the cookie storage survives the flushed session
        return response
