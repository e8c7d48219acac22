# ssh git remotes (tests/ssh.rs): the client, and Debian's sshd, run by the tests themselves on
# a loopback port with generated keys (the system's ssh service is not used).
ssh_need=()
have ssh || ssh_need+=(openssh-client)
have ssh-keygen || ssh_need+=(openssh-client)
[ -x /usr/sbin/sshd ] || ssh_need+=(openssh-server)
if [ "${#ssh_need[@]}" -gt 0 ]; then
    echo "install-deps: installing ${ssh_need[*]}" >&2
    $SUDO apt-get update -q >&2
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${ssh_need[@]}" >&2
fi
unset ssh_need
