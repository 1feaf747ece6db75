#!/bin/sh
# Kafka for the compose deployment (apache/kafka image). Clients reach it only
# over SASL/SCRAM-SHA-512 with ACLs: there is no anonymous client listener.
# The KRaft controller listener is PLAINTEXT on the container's own loopback
# (only this process connects to it; its principal ANONYMOUS is therefore a
# super user, as StandardAuthorizer requires for the controller).
# The admin SCRAM credential is written at format time (KRaft has no other
# way to create the first user); `citybrain security bootstrap` (service
# kafka-security) then creates one principal per service and department and
# their ACLs through the admin account.
set -eu
: "${KAFKA_ADMIN_PASSWORD:?set in .env}" "${KAFKA_CLUSTER_ID:?set in .env (kafka-storage.sh random-uuid)}"
conf=/tmp/server.properties
cat >"$conf" <<PROPS
node.id=1
process.roles=broker,controller
controller.quorum.voters=1@127.0.0.1:9093
listeners=SASL_PLAINTEXT://:9092,CONTROLLER://127.0.0.1:9093
advertised.listeners=SASL_PLAINTEXT://kafka:9092
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT
inter.broker.listener.name=SASL_PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$KAFKA_ADMIN_PASSWORD";
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:admin;User:ANONYMOUS
allow.everyone.if.no.acl.found=false
auto.create.topics.enable=false
num.partitions=4
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
log.dirs=/var/lib/kafka/data
PROPS
# the health check's client configuration (admin over SASL)
cat >/tmp/admin.properties <<PROPS
security.protocol=SASL_PLAINTEXT
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$KAFKA_ADMIN_PASSWORD";
PROPS
/opt/kafka/bin/kafka-storage.sh format --ignore-formatted -t "$KAFKA_CLUSTER_ID" -c "$conf" \
  --add-scram "SCRAM-SHA-512=[name=admin,password=$KAFKA_ADMIN_PASSWORD]"
exec /opt/kafka/bin/kafka-server-start.sh "$conf"
