//! SSM Run Command deploy driver for docker-compose services on EC2, and the .env refresher that runs on the instance.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
