# Debian packages sandboxd needs on its host, read by scripts/setup-host.sh (which installs the
# missing ones) and by scripts/guest/build-image.sh (which bakes them into the test guest).
# Sourced by bash: defines two arrays and nothing else.

# The daemon and the Python jail. tini: the jails' pid 1 (signals and orphans behave as on an
# ordinary machine).
apt_pkgs=(python3 python3-venv python3-dev ca-certificates bash coreutils util-linux procps
          fonts-dejavu-core libfreetype6 tini)

# Language toolchains for the other LibreChat languages (js ts c cpp java php rs go d f90 r),
# all from Debian's archive so jails bind only /usr and a few /etc directories. npm is not
# listed: setup-host.sh adds it only when the nodejs build lacks one.
lang_pkgs=(nodejs gcc g++ libc6-dev openjdk-17-jdk-headless php-cli rustc golang-go gdc gfortran
           r-base-core)
